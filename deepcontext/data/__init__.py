"""Where the patches come from: images, sampling, preprocessing, loaders.

decode -> imageset / lmdb_source -> sources (open a source) -> sampling
(grid geometry) -> preprocess (resize, patch normalisation) -> batches (the
one image-to-batch pipeline) -> loader (worker processes).  photos and
labelled hold the images installed with the Python packages.  Nothing here
imports the other rooms.
"""
