"""Where a layer's cells lie on the input: layouts, and the locality test that confirms them."""
