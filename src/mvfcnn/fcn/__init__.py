"""FCN training: tile index (tiling), tile datasets and augmentation (dataset), losses and
learning rates, the staged models (stage_model), the one training loop (train_loop), one stage
(train), the trunk pretraining (pretrain), checkpoints and learning curves; the command lines
of its verbs (cli)."""
