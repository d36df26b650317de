"""BUTD region features in plain PyTorch: the Visual Genome Faster R-CNN (ResNet C4) of bottom-up
attention, its two extraction protocols (`butd`, `lxmert`) and the image reading they share."""
