"""Pure math on arrays, no I/O: dequantization (``quant``), the exact top-K SVD (``svd``), statistics (``stats``), expert geometry (``geometry``)."""
