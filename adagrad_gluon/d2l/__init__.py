"""The Adagrad chapter of *Dive into Deep Learning*, with the book's names.

* :mod:`.chapter`: the 2-D example and the from-scratch ``adagrad`` (and ``rmsprop``);
* :mod:`.data`: ``get_data_ch10``, the NASA airfoil data;
* :mod:`.training`: ``train_ch10`` and ``train_concise_ch10``;
* :mod:`.diagnostics`: effective learning rates, read during training;
* :mod:`.plotting`: the pictures;
* :mod:`.experiments`: compare, sweep, remedy and the 2-D trajectory, returning results;
* :mod:`.report`: those results as tables, JSON documents and figures.
"""
