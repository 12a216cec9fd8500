"""cifar-accelerate: SimpleCNN vs ResNet-50 transfer learning on CIFAR-10 with Accelerate."""

__version__ = "0.1.0"
