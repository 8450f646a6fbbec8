"""Verification beyond `check`: restore drills that prove a backup comes back."""
