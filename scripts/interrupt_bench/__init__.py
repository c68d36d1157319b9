"""The interrupt benchmark's parts: load-generator client, servers, workloads, report."""
