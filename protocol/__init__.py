"""segsync's sans-I/O core: segment names, hashes, messages, limits and pure decisions.

Nothing in this package touches sockets, files, clocks or trio (like h11).
"""
