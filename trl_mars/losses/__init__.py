"""Pure loss functions (torch only), one module per method; each is tested against hand-computed values."""
