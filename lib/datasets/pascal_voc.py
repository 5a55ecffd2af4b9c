"""PASCAL VOC 2007/2012: the VOC-format dataset with the 20 VOC classes and the devkit's folder names."""
import os.path as osp

from lib.datasets.voc_format import voc_format
from lib.model.utils.config import cfg

VOC_CLASSES = ('__background__',  # always index 0
               'aeroplane', 'bicycle', 'bird', 'boat',
               'bottle', 'bus', 'car', 'cat', 'chair',
               'cow', 'diningtable', 'dog', 'horse',
               'motorbike', 'person', 'pottedplant',
               'sheep', 'sofa', 'train', 'tvmonitor')


class pascal_voc(voc_format):
    """voc_<year>_<image_set> from <devkit_path>/VOC<year> (devkit_path default: cfg.DATA_DIR/VOCdevkit<year>).

    The main metric is VOC2007's 11-point AP for years before 2010 and the area AP after, as the devkit.
    """

    def __init__(self, image_set, year, devkit_path=None):
        year = str(year)
        self._year = year
        self._devkit_path = devkit_path or osp.join(cfg.DATA_DIR, 'VOCdevkit' + year)
        super().__init__(image_set, osp.join(self._devkit_path, 'VOC' + year), classes=VOC_CLASSES,
                         name=f'voc_{year}_{image_set}', use_07_metric=int(year) < 2010,
                         results_dir=osp.join(self._devkit_path, 'results', 'VOC' + year, 'Main'))
