"""segsync's I/O shell around `protocol/`.

Packages, in the one direction their imports point:

    commands -> node, config -> serve -> push, pull -> peers -> archive -> telemetry -> protocol

`node.py` is the composition root: the only module that builds and wires every part.
`config.py` is the validated settings of a node. No module imports a package to its
left; tests/test_layout.py checks this and that there is no import cycle.
"""
