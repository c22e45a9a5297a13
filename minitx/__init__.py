"""minitx: an educational, from-scratch Transformer library."""
