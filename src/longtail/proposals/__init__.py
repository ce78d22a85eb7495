"""Class-agnostic mask proposals: networks (Mask R-CNN, SOLOv2), annotation-free methods, the shared format."""
