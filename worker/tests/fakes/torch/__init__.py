"""A fake of the little of torch the worker uses (torch.distributed)."""
