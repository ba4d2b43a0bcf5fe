"""Each source: digits, IDX (Fashion-MNIST), ImageFolder, fake, TFDS (mock_data)."""

import gzip
import os

import numpy as np
import pytest

from resnet_jax import data
from resnet_jax.data.sources import digits, fake, idx
from resnet_jax.data.sources.image_folder import ImageFolderSource


def test_digits_split_is_stratified_disjoint_and_covers():
  labels = np.repeat(np.arange(10), 12)
  train, test = digits.split_indices(labels, 'train'), digits.split_indices(labels, 'test')
  assert len(test) == 20 and np.all(np.bincount(labels[test]) == 2)
  assert sorted(np.concatenate([train, test])) == list(range(len(labels)))


def test_digits_source_and_info(make_config):
  info = data.dataset_info(make_config(image_size=16))
  assert info.num_examples == {'train': 1501, 'test': 296}
  assert info.image_shape == (16, 16, 1) and info.num_classes == 10
  record = digits.DigitsSource('test')[0]
  assert record['image'].dtype == np.uint8 and record['image'].shape == (8, 8, 1)
  assert record['image'].max() == 255  # 16 ink -> 255, so /255 is exactly 0..1.


def _write_idx(path, array, compress):
  header = bytes([0, 0, 0x08, array.ndim]) + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  opener = gzip.open if compress else open
  with opener(path + ('.gz' if compress else ''), 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize('compress', [False, True])
def test_idx_files_plain_and_gzip(tmp_path, make_config, compress):
  rng = np.random.default_rng(0)
  for prefix, n in (('train', 12), ('t10k', 5)):
    _write_idx(str(tmp_path / f'{prefix}-images-idx3-ubyte'), rng.integers(0, 256, (n, 28, 28)),
               compress)
    _write_idx(str(tmp_path / f'{prefix}-labels-idx1-ubyte'), np.arange(n) % 10, compress)
  cfg = make_config(name='fashion_mnist', dir=str(tmp_path), image_size=32)
  info = data.dataset_info(cfg)
  assert info.num_examples == {'train': 12, 'test': 5} and info.image_shape == (32, 32, 1)
  batch = next(iter(data.create_eval_iterator(cfg, global_batch_size=8)))
  assert batch['image'].shape == (8, 32, 32, 1) and batch['mask'].sum() == 5
  # 28 -> 32 is zero padding of 2 pixels: the border is the normalised value of black.
  border = batch['image'][0, 0, :, 0]
  np.testing.assert_allclose(border, -info.mean[0] / info.std[0], rtol=1e-5)


def test_idx_missing_files_say_how_to_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match='dataset-fashion-mnist.*data.dir'):
    idx.IdxSource(str(tmp_path), 'train')


def test_idx_truncated_file_is_named(tmp_path):
  path = str(tmp_path / 'x-idx1-ubyte')
  with open(path, 'wb') as f:
    f.write(bytes([0, 0, 8, 1]) + (100).to_bytes(4, 'big') + b'\0' * 10)
  with pytest.raises(ValueError, match='x-idx1-ubyte is truncated'):
    idx.read_idx(path)


@pytest.mark.skipif(not os.path.exists(os.path.join(idx.DEFAULT_DIR, 't10k-labels-idx1-ubyte.gz')),
                    reason='Debian package dataset-fashion-mnist not installed')
def test_real_fashion_mnist_files():
  source = idx.IdxSource('', 'test')
  assert len(source) == 10_000
  assert source[0]['image'].shape == (28, 28, 1) and 0 <= source[0]['label'] < 10


def test_image_folder(image_folder, make_config):
  cfg = make_config(name='image_folder', dir=image_folder, eval_split='val', image_size=24,
                    augment='imagenet')
  info = data.dataset_info(cfg)
  assert info.class_names == ['cat', 'dog'] and info.num_examples == {'train': 12, 'val': 6}
  assert info.image_shape == (24, 24, 3) and info.mean == (0.485, 0.456, 0.406)
  batch = next(data.create_train_iterator(cfg, seed=0, global_batch_size=4))
  assert batch['image'].shape == (4, 24, 24, 3) and batch['image'].dtype == np.float32
  src = ImageFolderSource(image_folder, 'val', ('cat', 'dog'))
  assert src[0]['id'].endswith(os.path.join('val', 'cat', '0.jpg')) and src[5]['label'] == 1


def test_image_folder_wrong_split_names_folders(image_folder, make_config):
  with pytest.raises(FileNotFoundError, match=r"\['train', 'val'\].*data.eval_split=val"):
    data.dataset_info(make_config(name='image_folder', dir=image_folder, eval_split='test'))


def test_fake_any_shape_and_classes(make_config):
  cfg = make_config(name='fake', fake_num_examples=20, fake_num_classes=7, image_size=12)
  info = data.dataset_info(cfg)
  assert info.num_classes == 7 and info.image_shape == (12, 12, 3)
  assert info.num_examples == {'train': 20, 'test': 20}
  a, b = fake.FakeSource('train', 20, 7, (5, 9, 3)), fake.FakeSource('train', 20, 7, (5, 9, 3))
  np.testing.assert_array_equal(a[3]['image'], b[3]['image'])
  assert a[3]['image'].shape == (5, 9, 3)
  assert not np.array_equal(a[3]['image'], fake.FakeSource('test', 20, 7, (5, 9, 3))[3]['image'])


@pytest.mark.parametrize('name,channels', [('cifar10', 3), ('mnist', 1), ('tfds:fashion_mnist', 1)])
def test_tfds_through_mock_data(make_config, name, channels):
  tfds = pytest.importorskip('tensorflow_datasets')
  cfg = make_config(name=name, image_size=32, augment='cifar')
  with tfds.testing.mock_data(num_examples=10):
    info = data.dataset_info(cfg)
    assert info.num_examples == {'train': 10, 'test': 10} and info.num_classes == 10
    assert info.image_shape == (32, 32, channels)
    batch = next(data.create_train_iterator(cfg, seed=0, global_batch_size=4))
    evals = list(data.create_eval_iterator(cfg, global_batch_size=4))
  assert batch['image'].shape == (4, 32, 32, channels) and batch['label'].dtype == np.int32
  assert len(evals) == 3 and sum(int(b['mask'].sum()) for b in evals) == 10


def test_tfds_imagenet_eval_mock(make_config):
  tfds = pytest.importorskip('tensorflow_datasets')
  cfg = make_config(name='imagenet2012', eval_split='validation', image_size=16, augment='imagenet')
  with tfds.testing.mock_data(num_examples=3):
    info = data.dataset_info(cfg)
    batch = next(iter(data.create_eval_iterator(cfg, global_batch_size=4)))
  assert info.num_classes == 1000 and batch['image'].shape == (4, 16, 16, 3)
  assert batch['mask'].tolist() == [True, True, True, False]
