"""Checkpoints: what they hold and our .pth format (native), model folders that travel (hub: config.json
+ model.safetensors + tokenizer + model card, resolved by name through the HuggingFace cache; card;
pretrained: from_pretrained / save_pretrained / push_to_hub), the authors' released formats (released),
the one reader that rebuilds a ready-to-evaluate model from any of them (loading), conversions
(convert) and atomic writes."""
