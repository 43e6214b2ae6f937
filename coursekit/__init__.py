"""coursekit: the helper package of a hands-on course on diffusion models.

One module per idea: tracks, data, zoo, samplers, train, metrics, viz. Import what you need,
for example `from coursekit import samplers, zoo`; nothing heavy loads until it is used.
"""
__version__ = "0.2.0"
