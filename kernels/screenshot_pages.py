"""Screenshots of a similarity run's HTML pages in headless Chromium (kernels/results/pages/).

  python -m experiments.similarity --flagfile=experiments/flags/synthetic_retrieval.flags \
      --out_dir=/tmp/pages_run
  python -m kernels.screenshot_pages /tmp/pages_run

Writes index.png (the run's index.html) and query.png (one query page, by default the first
page of the largest reference count) at 1400x1000, the size a laptop screen shows. Needs a
``chromium`` on PATH (Debian: ``apt-get install chromium``).
"""

import argparse
import pathlib
import shutil
import subprocess
import sys

OUT = pathlib.Path(__file__).resolve().parent / 'results' / 'pages'


def screenshot(page: pathlib.Path, png: pathlib.Path, size: str = '1400,1000') -> None:
  """Renders ``page`` with headless Chromium into ``png``."""
  chromium = shutil.which('chromium') or shutil.which('chromium-browser')
  if chromium is None:
    sys.exit('chromium not found on PATH (apt-get install chromium)')
  png.parent.mkdir(parents=True, exist_ok=True)
  subprocess.run([chromium, '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars',
                  f'--screenshot={png}', f'--window-size={size}', page.resolve().as_uri()],
                 check=True, capture_output=True, timeout=120)
  print(f'{page} -> {png}')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('run', type=pathlib.Path, help='the out_dir of a similarity run')
  parser.add_argument('--query', type=pathlib.Path, help='the query page (default: the first '
                      'page of the largest reference count)')
  parser.add_argument('--out', type=pathlib.Path, default=OUT, help='folder of the PNGs')
  args = parser.parse_args()
  index = args.run / 'index.html'
  if not index.exists():
    sys.exit(f'{index} not found: give the out_dir of a finished similarity run')
  query = args.query
  if query is None:
    folders = sorted(args.run.glob('R*/pages'), key=lambda p: int(p.parent.name[1:]))
    query = sorted(folders[-1].glob('*.html'))[0]
  screenshot(index, args.out / 'index.png')
  screenshot(query, args.out / 'query.png')


if __name__ == '__main__':
  main()
