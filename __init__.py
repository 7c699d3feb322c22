"""jigsaw: autoscaling compound inference on spatially partitioned GPUs.

The repository's top-level folders are this package's subpackages: ``jigsaw.profiles`` (the catalog) <-
``jigsaw.env`` (the model of serving and the Gymnasium environment) <- ``jigsaw.agents`` (the ILP, the policy,
the controller) <- ``jigsaw.serving_shim`` (workers and the daemon) <- ``jigsaw.scripts`` (the ``jigsaw``
command and benchmarks); each imports only those to its left.
"""
