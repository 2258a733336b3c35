"""Images in and out: loading, output naming, atomic writes, metadata."""
