"""The training loop every task shares, and what reads its runs."""
