"""Functions named by the local task configs in this folder (lm-eval loads this file by path).

The winogrande functions restate lm-eval 0.4.13's `tasks/winogrande/preprocess_winogrande.py`:
the context is the sentence up to the blank with each option filled in, and the continuation is
the rest of the sentence, so both choices are scored on the same continuation.
"""

from bench.zeroshot.local_data import load_local_dataset


def load_boolq(data_dir=None, **_metadata):
    return load_local_dataset("boolq", data_dir)


def load_piqa(data_dir=None, **_metadata):
    return load_local_dataset("piqa", data_dir)


def load_hellaswag(data_dir=None, **_metadata):
    return load_local_dataset("hellaswag", data_dir)


def load_winogrande(data_dir=None, **_metadata):
    return load_local_dataset("winogrande", data_dir)


def load_arc_easy(data_dir=None, **_metadata):
    return load_local_dataset("arc_easy", data_dir)


def load_arc_challenge(data_dir=None, **_metadata):
    return load_local_dataset("arc_challenge", data_dir)


def winogrande_doc_to_text(doc):
    """Return the index of the correct context (option), as lm-eval's multiple-input format expects."""
    answer_to_index = {"1": 0, "2": 1}
    return answer_to_index[doc["answer"]]


def winogrande_doc_to_target(doc):
    """Return the sentence after the blank, stripped: the continuation shared by both options."""
    blank = doc["sentence"].index("_") + 1
    return doc["sentence"][blank:].strip()


def winogrande_doc_to_choice(doc):
    """Return the sentence up to the blank completed with each option."""
    blank = doc["sentence"].index("_")
    return [doc["sentence"][:blank] + option for option in (doc["option1"], doc["option2"])]
