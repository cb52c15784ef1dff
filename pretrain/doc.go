// Package pretrain trains small base models from scratch, or continues one
// (context extension): the driver of `carryon pretrain` (Run: corpus,
// held-out documents, BPE tokenizer, training loop with cosine schedule,
// checkpoints that resume, validation and samples) over model.BaseTrainer,
// the base's full forward and backward pass. It exists to build the small
// pretrained base that the demo ships (scripts/make-default-base.sh).
package pretrain
