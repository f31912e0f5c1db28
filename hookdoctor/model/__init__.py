"""The user's model: loading it, its inputs and outputs, unwrapping, its module tree, and the guard that restores it."""
