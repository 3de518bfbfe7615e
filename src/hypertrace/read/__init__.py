"""Reading a session back: its directory and index, the records of its streams
(one at a time, or columnar in batches), and the clock mapping onto the host's
time line. Formats and analysis read sessions only through this package."""
