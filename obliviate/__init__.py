"""obliviate: make a language model forget chosen data or knowledge, and prove that it did."""

__version__ = "0.1.0"
