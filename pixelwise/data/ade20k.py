"""ADE20K SceneParsing (MIT Scene Parsing Benchmark, Zhou et al. 2017), the 150-class release.

Layout (``root`` = ``ADEChallengeData2016``)::

    images/{training,validation}/ADE_{train,val}_%08d.jpg        20210 / 2000 images
    annotations/{training,validation}/ADE_{train,val}_%08d.png   8-bit grayscale, same names
    objectInfo150.csv   sceneCategories.txt                      (metadata, not read here)

Annotation value 0 is "other objects", which the benchmark leaves out of training and scoring:
it becomes 255. Values 1..150 are the classes of ``objectInfo150.csv`` and become 0..149.

Class names are the full ``Name`` column of ``objectInfo150.csv`` (synonyms separated by ';',
e.g. ``"building;edifice"``), not only the first synonym: the first words collide ("screen"
twice) or mislead ("coffee" for coffee table, "swimming" for swimming pool). Use
:func:`short_name` for a display label. The palette is ``colors`` of the devkit's
``color150.mat``.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from pixelwise.data.base import (
    IGNORE_INDEX,
    SegmentationDataset,
    apply_lut,
    cached_index,
    file_names,
    lookup_table,
    missing_file,
    read_image,
    read_label_png,
    register_dataset,
    to_mask,
)
from pixelwise.errors import PixelwiseError

#: The ``Name`` column of objectInfo150.csv, in ``Idx`` order (Idx = class id + 1).
ADE20K_CLASSES = (
    "wall", "building;edifice", "sky", "floor;flooring", "tree", "ceiling", "road;route", "bed",
    "windowpane;window", "grass", "cabinet", "sidewalk;pavement",
    "person;individual;someone;somebody;mortal;soul", "earth;ground", "door;double;door", "table",
    "mountain;mount", "plant;flora;plant;life", "curtain;drape;drapery;mantle;pall", "chair",
    "car;auto;automobile;machine;motorcar", "water", "painting;picture", "sofa;couch;lounge",
    "shelf", "house", "sea", "mirror", "rug;carpet;carpeting", "field", "armchair", "seat",
    "fence;fencing", "desk", "rock;stone", "wardrobe;closet;press", "lamp",
    "bathtub;bathing;tub;bath;tub", "railing;rail", "cushion", "base;pedestal;stand", "box",
    "column;pillar", "signboard;sign", "chest;of;drawers;chest;bureau;dresser", "counter", "sand",
    "sink", "skyscraper", "fireplace;hearth;open;fireplace", "refrigerator;icebox",
    "grandstand;covered;stand", "path", "stairs;steps", "runway",
    "case;display;case;showcase;vitrine", "pool;table;billiard;table;snooker;table", "pillow",
    "screen;door;screen", "stairway;staircase", "river", "bridge;span", "bookcase",
    "blind;screen", "coffee;table;cocktail;table",
    "toilet;can;commode;crapper;pot;potty;stool;throne", "flower", "book", "hill", "bench",
    "countertop", "stove;kitchen;stove;range;kitchen;range;cooking;stove", "palm;palm;tree",
    "kitchen;island",
    "computer;computing;machine;computing;device;data;processor;electronic;computer;information;processing;system",
    "swivel;chair", "boat", "bar", "arcade;machine", "hovel;hut;hutch;shack;shanty",
    "bus;autobus;coach;charabanc;double-decker;jitney;motorbus;motorcoach;omnibus;passenger;vehicle",
    "towel", "light;light;source", "truck;motortruck", "tower", "chandelier;pendant;pendent",
    "awning;sunshade;sunblind", "streetlight;street;lamp", "booth;cubicle;stall;kiosk",
    "television;television;receiver;television;set;tv;tv;set;idiot;box;boob;tube;telly;goggle;box",
    "airplane;aeroplane;plane", "dirt;track", "apparel;wearing;apparel;dress;clothes", "pole",
    "land;ground;soil", "bannister;banister;balustrade;balusters;handrail",
    "escalator;moving;staircase;moving;stairway", "ottoman;pouf;pouffe;puff;hassock", "bottle",
    "buffet;counter;sideboard", "poster;posting;placard;notice;bill;card", "stage", "van", "ship",
    "fountain", "conveyer;belt;conveyor;belt;conveyer;conveyor;transporter", "canopy",
    "washer;automatic;washer;washing;machine", "plaything;toy",
    "swimming;pool;swimming;bath;natatorium", "stool", "barrel;cask", "basket;handbasket",
    "waterfall;falls", "tent;collapsible;shelter", "bag", "minibike;motorbike", "cradle", "oven",
    "ball", "food;solid;food", "step;stair", "tank;storage;tank",
    "trade;name;brand;name;brand;marque", "microwave;microwave;oven", "pot;flowerpot",
    "animal;animate;being;beast;brute;creature;fauna", "bicycle;bike;wheel;cycle", "lake",
    "dishwasher;dish;washer;dishwashing;machine", "screen;silver;screen;projection;screen",
    "blanket;cover", "sculpture", "hood;exhaust;hood", "sconce", "vase",
    "traffic;light;traffic;signal;stoplight", "tray",
    "ashcan;trash;can;garbage;can;wastebin;ash;bin;ash-bin;ashbin;dustbin;trash;barrel;trash;bin",
    "fan", "pier;wharf;wharfage;dock", "crt;screen", "plate", "monitor;monitoring;device",
    "bulletin;board;notice;board", "shower", "radiator", "glass;drinking;glass", "clock", "flag",
)  # fmt: skip
#: ``colors`` of visualizationCode/color150.mat, one RGB per class.
ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)  # fmt: skip

# 0 ("other objects") -> ignore, k -> k - 1; 151..255 never occur in the release.
_LUT = lookup_table({0: IGNORE_INDEX, **{k: k - 1 for k in range(1, 151)}}, default=-1)
_FOLDERS = {"train": "training", "val": "validation"}


def short_name(name: str) -> str:
    """The first synonym of a class name: ``"building;edifice"`` -> ``"building"``."""
    return name.split(";", 1)[0]


@register_dataset("ade20k")
class ADE20K(SegmentationDataset):
    """ADE20K SceneParsing: 150 classes, 20210 train / 2000 val images of varying size."""

    home = "ADEChallengeData2016"
    source = "ADEChallengeData2016.zip from data.csail.mit.edu/places/ADEchallenge"

    classes = ADE20K_CLASSES
    palette = ADE20K_PALETTE
    splits = ("train", "val")

    @property
    def expected_folders(self) -> tuple[str, ...]:  # type: ignore[override]
        folder = _FOLDERS[self.split]
        return (f"images/{folder}", f"annotations/{folder}")

    def index_source(self) -> str:
        return f"the folder {self.root / 'images' / _FOLDERS[self.split]}"

    def build_index(self) -> list[tuple[Path, Path]]:
        folder = _FOLDERS[self.split]
        watch = [self.root / "images" / folder, self.root / "annotations" / folder]
        return cached_index(("ade20k", self.root.resolve(), self.split), watch, self._scan)

    def _scan(self) -> list[tuple[Path, Path]]:
        images = self.root / "images" / _FOLDERS[self.split]
        labels = self.root / "annotations" / _FOLDERS[self.split]
        label_names = file_names(labels)
        samples = []
        for name in sorted(n for n in file_names(images) if n.lower().endswith(".jpg")):
            label = Path(name).stem + ".png"
            if label not in label_names:
                missing_file(
                    PixelwiseError(
                        f"Image {images / name} has no annotation: expected {labels / label}; "
                        "restore it from ADEChallengeData2016.zip or remove the image."
                    )
                )
            samples.append((images / name, labels / label))
        return samples

    def load_image(self, sample: tuple[Path, Path]) -> Tensor:
        return read_image(sample[0])

    def load_mask(self, sample: tuple[Path, Path]) -> Tensor:
        return to_mask(apply_lut(read_label_png(sample[1]), _LUT, sample[1]))
