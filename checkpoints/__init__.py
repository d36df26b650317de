"""Checkpoints: what they hold, its format and version and our .pth files (payload: the Payload class),
torch.load with one-line errors and strict weight loading (native), model folders that travel (hub:
config.json + model.safetensors + tokenizer + model card, resolved by name through the HuggingFace cache;
card; pretrained: from_pretrained / save_pretrained / push_to_hub), the authors' released formats
(released), the one reader of evaluation, --init_from and resume, which also rebuilds a ready-to-evaluate
model from any of them (loading), conversions (convert) and atomic writes."""
