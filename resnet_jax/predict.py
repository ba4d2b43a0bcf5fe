"""Top-5 labels of images: python -m resnet_jax.predict --model M --weights FILE IMAGE [IMAGE ...].

--weights is either
  - a torchvision state_dict (.pth / .pt / .safetensors) for the model --model: converted by
    resnet_jax.interop.torchvision, preprocessed as torchvision's eval (resize 256, centre crop
    224, normalise with ImageNet statistics), labelled with ImageNet's classes when it has 1000;
  - one of our runs, WORKDIR or WORKDIR/checkpoints/<step> (the newest step for a WORKDIR): model,
    dataset and image size from WORKDIR/config.json (--model optional), labels from the dataset's
    metadata, preprocessed by that dataset's eval transform.
Images are any file PIL reads (grayscale, RGBA, palette, 16-bit converted). An unreadable image is
reported by name, the others are still predicted, and the exit code is 1.
"""

import argparse
import dataclasses
import functools
import importlib.resources
import json
import os
import sys
from collections.abc import Callable

import numpy as np
from PIL import Image

from resnet_jax.data import decode, stats

TORCH_SUFFIXES = ('.pth', '.pt', '.safetensors')
RESIZE, CROP = 256, 224  # torchvision's ImageNet eval: Resize(256) + CenterCrop(224).


def imagenet_classes() -> list[str]:
  """The 1,000 ImageNet class names in index order (assets/imagenet_classes.txt)."""
  text = importlib.resources.files('resnet_jax').joinpath('assets/imagenet_classes.txt')
  return text.read_text(encoding='utf-8').splitlines()


def torchvision_preprocess(img: Image.Image, resize: int = RESIZE, crop: int = CROP,
                           mean=stats.IMAGENET[0], std=stats.IMAGENET[1]) -> np.ndarray:
  """torchvision's Resize(resize) + CenterCrop(crop) + ToTensor + Normalize, as [H, W, 3] float32.

  Same PIL calls (antialiased bilinear resize of the shorter side, int() for the longer one,
  round() for the crop offset) and the same float32 arithmetic, so the result equals
  torchvision's on the same PIL image.
  """
  img = decode.convert(img, 3)
  w, h = img.size
  short, long = (w, h) if w <= h else (h, w)
  new_short, new_long = resize, int(resize * long / short)
  size = (new_short, new_long) if w <= h else (new_long, new_short)
  if size != (w, h):
    img = img.resize(size, Image.BILINEAR)
  w, h = img.size
  top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
  img = img.crop((left, top, left + crop, top + crop))  # Outside the image PIL fills zeros.
  x = np.asarray(img, np.float32) / np.float32(255.0)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


@dataclasses.dataclass
class Predictor:
  """A model with its weights, labels and preprocessing (encoded file bytes -> [H, W, C])."""

  model: object  # flax nn.Module
  variables: dict
  labels: list[str]
  preprocess: Callable[[bytes], np.ndarray]
  description: str  # Where the weights came from, for the output header.

  @functools.cached_property
  def _apply(self):
    import jax

    return jax.jit(functools.partial(self.model.apply, train=False))

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    """Softmax over classes of a batch [N, H, W, C] of preprocessed images."""
    import jax

    logits = self._apply(self.variables, images)
    return np.asarray(jax.nn.softmax(logits.astype(np.float32), axis=-1))


def _torchvision_bytes(data: bytes) -> np.ndarray:
  return torchvision_preprocess(decode.open_image(data))


def load_torchvision(path: str, model_name: str) -> Predictor:
  """A predictor for torchvision weights (num_classes read from the file's fc layer)."""
  from resnet_jax.interop.torchvision import from_torchvision
  from resnet_jax.models import create_model

  variables = from_torchvision(path, model_name)
  num_classes = variables['params']['fc']['bias'].shape[0]
  labels = imagenet_classes() if num_classes == 1000 else [f'class {i}' for i in
                                                           range(num_classes)]
  model = create_model(model_name, num_classes=num_classes)
  return Predictor(model, variables, labels, _torchvision_bytes,
                   f'{model_name} from torchvision weights {path}')


def resolve_run(path: str) -> tuple[str, str]:
  """(WORKDIR/config.json, WORKDIR/checkpoints/<step>) for a workdir, step or state directory."""
  from resnet_jax import checkpoint

  path = os.path.abspath(path)
  if os.path.basename(path) == checkpoint.STATE:
    path = os.path.dirname(path)
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    root = os.path.join(path, 'checkpoints')
    # Orbax renames a step directory to its bare number only once the save completed.
    steps = [int(n) for n in os.listdir(root)
             if n.isdigit() and os.path.isdir(os.path.join(root, n, checkpoint.STATE))]
    if not steps:
      raise FileNotFoundError(f'{root}: no finished checkpoint (<step>/{checkpoint.STATE}); '
                              'train longer or pass another run.')
    workdir, step_dir = path, os.path.join(root, str(max(steps)))
  elif os.path.isdir(os.path.join(path, checkpoint.STATE)):
    workdir, step_dir = os.path.dirname(os.path.dirname(path)), path
  else:
    raise FileNotFoundError(
      f'--weights {path}: neither a run directory (with checkpoints/) nor a checkpoint step '
      f'directory (with {checkpoint.STATE}/); pass WORKDIR, WORKDIR/checkpoints/<step>, or a '
      f'torchvision file ({", ".join(TORCH_SUFFIXES)}).')
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f'{config_path} not found: the run that wrote {step_dir} must have '
                            'its config.json in its workdir (resnet_jax.main writes it).')
  return config_path, step_dir


def restore_variables(step_dir: str, model, image_shape: tuple[int, int, int]) -> dict:
  """params and batch_stats of the TrainState at `step_dir` (optimiser state etc. not read)."""
  import jax
  import jax.numpy as jnp
  import orbax.checkpoint as ocp

  from resnet_jax import checkpoint

  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = {k: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            shapes.get(k, {})) for k in ('params', 'batch_stats')}
  args = ocp.args.PyTreeRestore(item=target, partial_restore=True,
                                restore_args=ocp.checkpoint_utils.construct_restore_args(target))
  with ocp.PyTreeCheckpointer() as ckpt:
    return ckpt.restore(os.path.join(step_dir, checkpoint.STATE), args=args)


def load_run(path: str, model_name: str | None = None) -> Predictor:
  """A predictor for one of our checkpoints, configured by its run's config.json."""
  import ml_collections

  from resnet_jax.data import pipeline, sources

  config_path, step_dir = resolve_run(path)
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if model_name and model_name != config.model.name:
    raise ValueError(f'--model {model_name} but {config_path} trained {config.model.name!r}; '
                     'drop --model or pass the matching name.')
  # The dataset's metadata, not dataset_info: that opens every split, and predicting must not
  # need the training files.
  meta = sources.source_meta(config.data)
  labels = list(meta.class_names or [f'class {i}' for i in range(meta.num_classes)])
  # The pipeline's own eval processor, so prediction cannot drift from evaluation; normalised on
  # the host whatever the run's data.host_normalize.
  processor = dataclasses.replace(pipeline._processor(config.data, train=False), normalize=True)
  # The trainer's own construction (same model options), always computing in float32.
  from resnet_jax.train import create_model_from_config
  config.half_precision = False
  model = create_model_from_config(config, meta.num_classes)
  variables = restore_variables(step_dir, model, processor.shape)
  return Predictor(model, variables, labels, lambda data: processor.image(data, None),
                   f'{config.model.name} on {config.data.name} from {step_dir}')


def load_predictor(weights: str, model_name: str | None) -> Predictor:
  """Dispatches on --weights: a torchvision file or one of our run/checkpoint directories."""
  if os.path.isdir(weights):
    return load_run(weights, model_name)
  if not os.path.exists(weights):
    raise FileNotFoundError(f'--weights {weights}: no such file or directory.')
  if not weights.endswith(TORCH_SUFFIXES):
    raise ValueError(f'--weights {weights}: expected a torchvision file '
                     f'({", ".join(TORCH_SUFFIXES)}) or a run/checkpoint directory.')
  if not model_name:
    raise ValueError(f'--weights {weights} is a torchvision file: pass --model (e.g. resnet50) '
                     'naming its architecture.')
  return load_torchvision(weights, model_name)


def read_image(path: str, predictor: Predictor) -> np.ndarray:
  """One preprocessed image; raises decode.BadExample or OSError naming the problem."""
  try:
    Image.open(path).close()  # Header only: says "not an image" without PIL's BytesIO repr.
  except Image.UnidentifiedImageError:
    raise decode.BadExample('not an image format PIL recognises') from None
  with open(path, 'rb') as f:
    data = f.read()
  return predictor.preprocess(data)


def top_k(probs: np.ndarray, k: int) -> list[tuple[int, float]]:
  """(index, probability) of the k most probable classes, most probable first."""
  order = np.argsort(-probs, kind='stable')[:k]
  return [(int(i), float(probs[i])) for i in order]


def predict_files(predictor: Predictor, paths: list[str], k: int = 5):
  """({path: [(index, label, prob)] for readable images}, {path: error message} for the rest)."""
  images, ok, errors = [], [], {}
  for path in paths:
    try:
      images.append(read_image(path, predictor))
      ok.append(path)
    except (OSError, decode.BadExample) as e:
      errors[path] = str(e) if isinstance(e, decode.BadExample) else (e.strerror or str(e))
  results = {}
  if images:
    probs = predictor.probabilities(np.stack(images))
    for path, p in zip(ok, probs, strict=True):
      results[path] = [(i, predictor.labels[i], q) for i, q in top_k(p, k)]
  return results, errors


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m resnet_jax.predict',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('images', nargs='+', metavar='IMAGE', help='image files')
  parser.add_argument('--weights', required=True,
                      help='torchvision .pth/.pt/.safetensors, or WORKDIR[/checkpoints/<step>]')
  parser.add_argument('--model', default=None,
                      help='architecture (resnet_jax.models.list_models()); needed for '
                           'torchvision files, read from config.json for our runs')
  parser.add_argument('--top', type=int, default=5, help='how many classes to show')
  args = parser.parse_args(argv)
  try:
    predictor = load_predictor(args.weights, args.model)
  except (OSError, ValueError, KeyError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  results, errors = predict_files(predictor, args.images, max(args.top, 1))
  print(predictor.description)
  for path in args.images:
    if path in errors:
      print(f'error: {path}: cannot read image ({errors[path]})', file=sys.stderr)
      continue
    print(f'\n{path}')
    for rank, (index, label, prob) in enumerate(results[path], start=1):
      print(f'  {rank}. {prob:7.2%}  {label} ({index})')
  return 1 if errors else 0


if __name__ == '__main__':
  sys.exit(main())
