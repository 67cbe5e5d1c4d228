"""Object-based baselines (paper §4.1, Tables 1 and 3): crops of single objects, classified by
hand-crafted features + SVM, CIFARNet from scratch, VGG19 DeCAF + SVM, or a fine-tuned VGG16.

``crops`` (verb ``crop-objects``) cuts and warps the objects; ``run`` (verb ``train-baseline``)
trains one method and writes the shared evaluation format; ``cli`` holds the command lines of
both verbs. Importing this package is cheap.
"""

from __future__ import annotations

METHODS: tuple[str, ...] = ("handcrafted_svm", "cifarnet", "vgg19_svm", "vgg16")
#: methods that run a CNN (the workflow gives them ``resources: gpu=1``)
NETWORK_METHODS: tuple[str, ...] = ("cifarnet", "vgg19_svm", "vgg16")
#: methods with a ``pretrained:`` setting (none | imagenet | patches | a path | match)
PRETRAINED_METHODS: tuple[str, ...] = ("vgg19_svm", "vgg16")
#: ``pretrained: match``: the initialisation of the MVFCNN variant the tables compare with
#: (resolved by :func:`mvfcnn.core.runs.baseline_init`)
MATCH = "match"
