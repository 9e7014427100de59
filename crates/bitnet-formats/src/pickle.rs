//! PyTorch checkpoints (`torch.save` zip archives) through a restricted unpickler. (in progress)
