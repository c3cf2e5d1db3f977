"""Readers for the on-disk formats of VOLTA, bottom-up-attention and Flickr30k Entities."""
