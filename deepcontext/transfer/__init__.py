"""From a trained model to a network other tools fine-tune.

debatchnorm (fold BatchNorm), calibration (data-dependent rescaling,
Kraehenbuehl et al.) and fast_rcnn (the detection export).  Imports
``data`` and ``model``; not ``train`` or ``eval``.
"""
