"""predict: torchvision preprocessing and top-5 parity on scikit-learn's photos; our checkpoints."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from resnet_jax import predict

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')
from torchvision import transforms as T  # noqa: E402

PHOTOS = os.path.join(os.path.dirname(pytest.importorskip('sklearn.datasets').__file__), 'images')
CHINA, FLOWER = os.path.join(PHOTOS, 'china.jpg'), os.path.join(PHOTOS, 'flower.jpg')
# Same PIL resize call and the same float32 operations: equal in practice; the bound only allows
# for a different order of float32 operations in a future torchvision.
PREPROCESS_ATOL = 1e-6


def torchvision_eval(img: Image.Image) -> np.ndarray:
  tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                  T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
  return tf(img).permute(1, 2, 0).numpy()


@pytest.mark.parametrize('crop', [None, (0, 0, 301, 427), (0, 0, 640, 255), (3, 5, 230, 229)])
def test_preprocessing_equals_torchvision(crop):
  img = Image.open(CHINA).convert('RGB')
  if crop:  # Portrait, landscape below 256, near-square odd sizes: rounding of both sides.
    img = img.crop(crop)
  ours = predict.torchvision_preprocess(img)
  theirs = torchvision_eval(img)
  assert ours.shape == theirs.shape == (224, 224, 3) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=PREPROCESS_ATOL)


def test_gray_and_rgba_become_rgb():
  rgb = Image.open(FLOWER).convert('RGB')
  gray, rgba = rgb.convert('L'), rgb.convert('RGBA')
  np.testing.assert_array_equal(predict.torchvision_preprocess(gray),
                                predict.torchvision_preprocess(gray.convert('RGB')))
  np.testing.assert_array_equal(predict.torchvision_preprocess(rgba),
                                predict.torchvision_preprocess(rgb))


def test_imagenet_classes_shipped():
  names = predict.imagenet_classes()
  assert len(names) == 1000 and names[0] == 'tench' and names[999] == 'toilet tissue'


def test_torchvision_weights_top5_equal_torchvision(tmp_path, capsys):
  torch.manual_seed(0)
  net = torchvision.models.resnet18().eval()
  weights = tmp_path / 'resnet18.pth'
  torch.save(net.state_dict(), weights)

  predictor = predict.load_predictor(str(weights), 'resnet18')
  results, errors = predict.predict_files(predictor, [CHINA, FLOWER])
  assert not errors
  for path in (CHINA, FLOWER):
    x = torch.from_numpy(torchvision_eval(Image.open(path).convert('RGB'))).permute(2, 0, 1)
    with torch.no_grad():
      probs = torch.softmax(net(x[None]), dim=-1)[0]
    top = torch.topk(probs, 5)
    assert [r[0] for r in results[path]] == top.indices.tolist()
    np.testing.assert_allclose([r[2] for r in results[path]], top.values.numpy(), atol=1e-4)
    assert [r[1] for r in results[path]] == [predict.imagenet_classes()[i] for i in top.indices]

  assert predict.main(['--model', 'resnet18', '--weights', str(weights), CHINA]) == 0
  out = capsys.readouterr().out
  assert out.count('%') == 5 and CHINA in out


def test_torchvision_file_needs_model(tmp_path, capsys):
  weights = tmp_path / 'w.pth'
  weights.write_bytes(b'')
  assert predict.main(['--weights', str(weights), CHINA]) == 2
  assert 'pass --model' in capsys.readouterr().err


# ---- our checkpoints -----------------------------------------------------------------------


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
  """A short digits run of resnet_tiny through the trainer: (workdir, final eval results)."""
  from configs import digits
  from resnet_jax import train
  config = digits.get_config()
  config.model.name = 'resnet_tiny'
  config.total_steps = 40
  config.log_every_steps = 20
  config.log.tensorboard = False
  config.log.progress_bar = False
  workdir = str(tmp_path_factory.mktemp('digits_run'))
  return workdir, train.train_and_evaluate(config, workdir)


def digits_test_pngs(directory, n=None):
  """The digits test split as 8x8 grayscale PNG files (as the source yields them), with labels."""
  from resnet_jax.data.sources.digits import DigitsSource
  source = DigitsSource('test')
  paths, labels = [], []
  for i in range(n or len(source)):
    record = source[i]
    path = os.path.join(directory, f'{i}.png')
    Image.fromarray(record['image'][..., 0], 'L').save(path)
    paths.append(path)
    labels.append(record['label'])
  return paths, labels


def test_checkpoint_preprocessing_is_the_eval_pipeline(digits_run, tmp_path):
  import ml_collections

  from resnet_jax import data
  workdir, _ = digits_run
  predictor = predict.load_predictor(workdir, None)
  paths, _ = digits_test_pngs(tmp_path, n=16)
  with open(os.path.join(workdir, 'config.json')) as f:
    config = ml_collections.ConfigDict(json.load(f)).data
  batch = next(iter(data.create_eval_iterator(config, split='test', global_batch_size=16,
                                              process_index=0, process_count=1)))
  ours = np.stack([predict.read_image(p, predictor) for p in paths])
  np.testing.assert_array_equal(ours, batch['image'])


def test_checkpoint_predictions_reproduce_the_run_accuracy(digits_run, tmp_path, capsys):
  workdir, results = digits_run
  paths, labels = digits_test_pngs(tmp_path)
  step_dir = os.path.join(workdir, 'checkpoints', '40')
  for weights in (workdir, step_dir, os.path.join(step_dir, 'state')):
    predictor = predict.load_predictor(weights, 'resnet_tiny')
    assert predictor.labels == [str(i) for i in range(10)] and step_dir in predictor.description
  out, errors = predict.predict_files(predictor, paths, k=5)
  assert not errors
  top1 = np.mean([out[p][0][0] == y for p, y in zip(paths, labels, strict=True)])
  # Same weights, same images; one near-tie flipping between 8 devices and 1 is tolerated.
  assert abs(top1 - results['eval/top1']) <= 1 / len(paths) + 1e-9
  assert all(len(out[p]) == 5 and out[p][0][2] >= out[p][4][2] for p in paths)


def test_unreadable_image_is_named_and_others_still_predicted(digits_run, tmp_path, capsys):
  workdir, _ = digits_run
  good, _ = digits_test_pngs(tmp_path, n=1)
  bad = tmp_path / 'bad.jpg'
  bad.write_bytes(b'not an image')
  truncated = tmp_path / 'truncated.jpg'
  with open(FLOWER, 'rb') as f:
    truncated.write_bytes(f.read()[:2000])
  rgba = tmp_path / 'rgba.png'
  buf = io.BytesIO()
  Image.open(FLOWER).convert('RGBA').save(buf, 'PNG')
  rgba.write_bytes(buf.getvalue())
  paths = [str(bad), good[0], str(truncated), str(rgba), str(tmp_path / 'missing.png')]
  assert predict.main(['--weights', workdir, *paths]) == 1
  captured = capsys.readouterr()
  assert f'{bad}: cannot read image (not an image format PIL recognises)' in captured.err
  assert f'{truncated}: cannot read image' in captured.err
  assert 'missing.png: cannot read image (No such file or directory)' in captured.err
  assert good[0] in captured.out and str(rgba) in captured.out


def test_run_model_mismatch_and_bad_weights_are_clear(digits_run, tmp_path):
  workdir, _ = digits_run
  with pytest.raises(ValueError, match="trained 'resnet_tiny'"):
    predict.load_predictor(workdir, 'resnet50')
  with pytest.raises(FileNotFoundError, match='neither a run directory'):
    predict.load_predictor(str(tmp_path), None)
  with pytest.raises(FileNotFoundError, match='no such file'):
    predict.load_predictor(str(tmp_path / 'nope.pth'), 'resnet18')
