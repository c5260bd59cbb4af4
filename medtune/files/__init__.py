"""Files that must not lie: atomic writes and locks for shared caches (`atomic`), full or unwritable disks said in one
line (`space`). Standard library only (and Hydra's callback base for the run-directory check)."""
