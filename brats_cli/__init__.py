"""brats: the residual 3D U-Net with localisation (BraTS 2021) for glioma segmentation."""

__version__ = "0.1.0"
