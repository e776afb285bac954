"""The error every data source raises (convlstm.data.sources, convlstm.data.gridded)."""


class DataError(ValueError):
    """Data that cannot be used as given; the message names the file and the value."""
