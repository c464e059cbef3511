"""The networks and the solver as Caffe definitions, and the pycaffe adapter.

Imports only ``deepcontext.data`` (patch geometry).
"""
