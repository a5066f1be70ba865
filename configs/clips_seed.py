"""Product clips, as the task is written: title word vectors (MiniLM-L6) + BiLSTM, ResNet-50 per
frame + LSTM over the frames, CNN-LSTM over the voice-over, late concat + MLP; cross-entropy;
Adam. Other heads: `--set model.fusion=cnn_rnn` (or mbt, perceiver, tensor_fusion);
adversarial alignment: `--set model.adversarial_weight=0.1`."""

from mmjax.experiments import product_clips_config


def get_config(arg: str | None = None):
    return product_clips_config(arg)
