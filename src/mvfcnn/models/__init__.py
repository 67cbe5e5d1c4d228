"""Networks: the VGG16 trunk, FCN-32s/16s/8s, ImageNet weights, input normalisation, model files.

torch is imported by this package, so import it only from verbs that need a network.
"""

from mvfcnn.models.fcn import (
    FCN,
    STAGES,
    build_fcn,
    fcn8s,
    fcn8s_from,
    fcn16s,
    fcn16s_from,
    fcn32s,
    init_from_parent,
    load_trunk_weights,
)
from mvfcnn.models.fcn_layers import bilinear_kernel
from mvfcnn.models.io import load_model, register_arch, registered_archs, save_model
from mvfcnn.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize_batch, to_input_tensor
from mvfcnn.models.vgg_trunk import TrunkFeatures, VGGTrunk, trunk_state_from_torchvision
from mvfcnn.models.weights import imagenet_cache_path, imagenet_state_dict, imagenet_weights

__all__ = [
    "FCN",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "STAGES",
    "TrunkFeatures",
    "VGGTrunk",
    "bilinear_kernel",
    "build_fcn",
    "fcn8s",
    "fcn8s_from",
    "fcn16s",
    "fcn16s_from",
    "fcn32s",
    "imagenet_cache_path",
    "imagenet_state_dict",
    "imagenet_weights",
    "init_from_parent",
    "load_model",
    "load_trunk_weights",
    "normalize_batch",
    "register_arch",
    "registered_archs",
    "save_model",
    "to_input_tensor",
    "trunk_state_from_torchvision",
]
