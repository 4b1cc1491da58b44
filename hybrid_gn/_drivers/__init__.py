"""The drivers: each holds its loop and its I/O around the pipeline's transitions."""
