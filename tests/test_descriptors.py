import numpy as np
import pytest

from fwjax import descriptors


def test_table_has_the_17_nfrc_descriptors_with_parents_before_children():
  assert len(descriptors.CODES) == 17
  for code, parent in descriptors.PARENTS.items():
    if parent is not None:
      assert descriptors.INDEX[parent] < descriptors.INDEX[code]
      assert code.startswith(parent + '-')


def test_parse_adds_parents_and_orders_codes():
  assert descriptors.parse_labels('D09; d02-01') == ('D02', 'D02-01', 'D09')
  assert descriptors.parse_labels('D01-01,D01-02') == ('D01', 'D01-01', 'D01-02')
  assert descriptors.parse_labels('') == ()


def test_parse_names_unknown_codes_and_where_they_came_from():
  with pytest.raises(descriptors.LabelError, match=r"\['D99'\] in labels.csv row 3"):
    descriptors.parse_labels('D01;D99', where='labels.csv row 3')


def test_encode_decode_round_trip():
  codes = ('D01', 'D01-02', 'D14')
  vector = descriptors.encode(codes)
  assert vector.sum() == 3
  assert descriptors.decode(vector) == codes
  matrix = descriptors.encode_many([codes, ()])
  np.testing.assert_array_equal(matrix[0], vector)
  assert matrix[1].sum() == 0
