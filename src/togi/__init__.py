"""togi (研ぎ): sharpen a pretrained language model for one task on your own data."""

__version__ = "0.1.0"
