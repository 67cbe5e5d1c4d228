# mvfcnn: the whole Azimi et al. (2018) study as one DAG.
#   snakemake --cores all --resources gpu=1            # workstation
#   snakemake --profile profiles/slurm                  # cluster
# Rules are thin: they call `mvfcnn <verb>` (src/mvfcnn/cli.py); the science lives in src/mvfcnn/.

import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from mvfcnn.config import check_config_fields, check_config_files, check_config_keys
from mvfcnn.errors import InputError

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# Keys given twice in one file, then unknown keys: the message names the key and the closest
# valid one (a typo must not silently leave the default in place), then the schema's
# types/ranges and defaults.
try:
    check_config_files(
        [os.path.join(workflow.basedir, "config", "config.yaml"), *workflow.overwrite_configfiles]
    )
    check_config_keys(config, os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml"))
except InputError as err:
    raise WorkflowError(str(err)) from None  # one line, no traceback into the package
validate(config, "workflow/schemas/config.schema.yaml")
try:  # rules between keys (overlap < window, ignore_index, defined variants, weights files)
    check_config_fields(config)
except InputError as err:
    raise WorkflowError(f"config: {err}") from None


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/fcn.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/classify.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        all_targets,
