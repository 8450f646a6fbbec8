"""medvault: encrypted, deduplicating, verified backup and recovery for healthcare data."""

__version__ = "0.1.0"
