"""English-Italian translation: data, subword vocabulary, training and its snapshots, search and evaluation."""
