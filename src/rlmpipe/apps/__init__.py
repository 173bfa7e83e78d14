"""Applications built only from the layers below them."""
