"""Forget-me-not task inference: which game is this? (see fmn.forget_me_not)."""
from fmn.forget_me_not import FMNConfig, ForgetMeNot

__all__ = ["FMNConfig", "ForgetMeNot"]
