"""Recipes are typed and validated before any work: one line naming the key for every problem."""

import pytest
import yaml

from training.recipe import Recipe, RecipeError, bundled_recipes, load_recipe


@pytest.mark.parametrize('name', sorted(bundled_recipes()))
def test_bundled_recipes_validate(name):
    recipe = load_recipe(name)
    assert recipe['name'] == name and recipe['source'].endswith(f'{name}.yaml')
    assert set(recipe) == set(Recipe.model_fields) | {'source'}


def test_defaults_fill_a_minimal_recipe(tmp_path):
    (tmp_path / 'r.yaml').write_text('model: {name: cf_resnet18_fmnist}\n')
    recipe = load_recipe(str(tmp_path / 'r.yaml'))
    assert recipe['optim'] == Recipe.model_fields['optim'].default.model_dump()
    assert recipe['epochs'] == 10 and recipe['cuttlefish'] is None and recipe['name'] == 'r'


def test_overrides_parse_numbers_as_numbers():
    recipe = load_recipe(
        'fmnist_resnet18', ['optim.lr=1e-3', 'optim.weight_decay=5E-5', 'batch.stages=[[0,64],[2,128]]']
    )
    assert recipe['optim']['lr'] == 0.001 and recipe['optim']['weight_decay'] == 5e-5
    assert recipe['batch']['stages'] == [[0, 64], [2, 128]]


def test_a_file_reads_1e_minus_3_as_a_number(tmp_path):
    (tmp_path / 'r.yaml').write_text('model: {name: cf_resnet18_fmnist}\noptim: {lr: 1e-3}\n')
    assert load_recipe(str(tmp_path / 'r.yaml'))['optim']['lr'] == 0.001


def test_the_result_is_plain_data_that_round_trips_through_yaml(tmp_path):
    recipe = load_recipe('imagenet_resnet50_cuttlefish')
    saved = tmp_path / 'recipe.yaml'
    saved.write_text(yaml.safe_dump(recipe, sort_keys=False))  # what the trainer writes into a run
    assert load_recipe(str(saved)) == dict(recipe, source=str(saved))


@pytest.mark.parametrize(
    'override,message',
    [
        ('optim.lr=-0.1', 'optim.lr: must be greater than 0, got -0.1'),
        ('optim.lr=0', 'optim.lr: must be greater than 0, got 0'),
        ('optim.lr=.nan', 'optim.lr: must be a finite number, got nan'),
        ('optim.lr=fast', "optim.lr: must be a valid number, got 'fast'"),
        ('epochs=0', 'epochs: must be greater than or equal to 1, got 0'),
        ('epochs=-3', 'epochs: must be greater than or equal to 1, got -3'),
        ('epochs=2.5', 'epochs: must be a valid integer, got 2.5'),
        ('seed=true', 'seed: must be a valid integer, got True'),
        ('log.progress=1', 'log.progress: must be a valid boolean, got 1'),
        ('batch.stages=[[0, 0]]', 'batch.stages[0][1]: must be greater than or equal to 1, got 0'),
        ('batch.stages=[[0]]', 'batch.stages[0][1]: missing (required)'),
        ('batch.stages=[]', 'batch.stages: must have at least 1 items, got []'),
        ('batch.stages=[[1, 64]]', 'batch.stages: must start at epoch 0 with increasing epochs, got [[1, 64]]'),
        ('batch.base=0', 'batch.base: must be greater than or equal to 1, got 0'),
        ('data.eval_batch=0', 'data.eval_batch: must be greater than or equal to 1, got 0'),
        ('data.workers=-1', 'data.workers: must be greater than or equal to 0, got -1'),
        ('optim.momentum=1.5', 'optim.momentum: must be less than 1, got 1.5'),
        ('optim.betas=[0.9]', 'optim.betas: must have at least 2 items, got [0.9]'),
        ('distributed.grid=[2, 0]', 'distributed.grid[1]: must be greater than or equal to 1, got 0'),
        ('checkpoint.keep=0', 'checkpoint.keep: must be greater than or equal to 1, got 0'),
        (
            'schedule.milestones=[3, 20]',
            'schedule.milestones: must be increasing epochs between 1 and 9 (epochs is 10)',
        ),
        ('schedule.milestones=[5, 3]', 'schedule.milestones: must be increasing epochs between 1 and 9'),
        ('schedule.gamma=2', 'schedule.gamma: must be less than or equal to 1, got 2'),
        ('optim.name=sgdd', "optim.name: 'sgdd' is not one of 'sgd', 'adamw'; did you mean 'sgd'?"),
        (
            'schedule.decay=cosinee',
            "schedule.decay: 'cosinee' is not one of 'step', 'cosine', 'constant'; did you mean",
        ),
        (
            'distributed.allreduce=tourus',
            "distributed.allreduce: 'tourus' is not one of 'torus', 'ring'; did you mean 'torus'",
        ),
        ('amp=fp32', "amp: 'fp32' is not one of 'auto', 'off', 'fp16', 'bf16'"),
        ('batch.rule=smtih', "batch.rule: 'smtih' is not one of 'linear', 'smith'; did you mean 'smith'?"),
        ('task.name=clasification', "task.name: unknown task 'clasification'; available: ['classification', 'distil"),
        ('optim=3', 'optim: must be a valid dictionary or instance of OptimSection, got 3'),
        ('optim.lrr=1', "override 'optim.lrr': unknown key; known here: ['betas', 'clip_grad_norm', 'lr', 'momentum'"),
        ('optimm.lr=1', "override 'optimm.lr': optimm: unknown key; known here: ['amp', 'batch'"),
        ('nonsense=1', "override 'nonsense': unknown key; known here: ['amp', 'batch', 'checkpoint'"),
        ('batch.stages', "override 'batch.stages' must look like key.path=value"),
        ('=3', "override '=3' must look like key.path=value"),
        ('batch.stages=[[0,', "override 'batch.stages=[[0,': the value '[[0,' is not valid YAML: expected the node"),
        ('optim.lr.x=1', "override 'optim.lr.x': optim.lr is not a section"),
        # free-form sections, checked against what consumes them
        ('model.args.foo=1', 'model.args.foo: cf_resnet18_fmnist takes no such argument'),
        ('model.args.widths=[1, 2]', 'model.args of cf_resnet18_fmnist (widths): '),
        ('model.name=cf_resnt18', "model.name: Unknown model 'cf_resnt18'. Did you mean: cf_resnet18"),
        ('model.name=mrl_seg_nano', 'model.name: mrl_seg_nano is a model for nuclei-segmentation, but task '),
        ('task.args.datset=x', "task.args.datset: unknown key; ClassificationTask takes: ['augment'"),
        ('task.args.train_subset=many', "task.args.train_subset: expected int | None, got 'many'"),
        ('task.args.label_smoothing=[0.1]', 'task.args.label_smoothing: expected float, got [0.1]'),
        ('cuttlefish.presett=short', "cuttlefish.presett: unknown key; CuttlefishSwitch takes: ['epsilon'"),
        ('cuttlefish.preset=shrt', "cuttlefish: unknown Cuttlefish preset 'shrt'; available: ['cifar'"),
        ('cuttlefish.profile=maybe', "cuttlefish.profile: expected bool, got 'maybe'"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(override, message):
    with pytest.raises(RecipeError) as caught:
        load_recipe('fmnist_resnet18', [override])
    assert str(caught.value).startswith(message), str(caught.value)
    assert '\n' not in str(caught.value)


def test_free_form_keys_are_read_from_the_constructors_not_a_copied_list(monkeypatch):
    """The callback's arguments change (as they do while Cuttlefish is developed): the recipe follows."""
    from training import cuttlefish

    class Switch:
        def __init__(self, brand_new: int = 0):
            pass

    monkeypatch.setattr(cuttlefish, 'CuttlefishSwitch', Switch)
    assert load_recipe('fmnist_resnet18', ['cuttlefish.brand_new=3'])['cuttlefish'] == {'brand_new': 3}
    with pytest.raises(RecipeError, match=r"cuttlefish.preset: unknown key; Switch takes: \['brand_new'\]"):
        load_recipe('fmnist_resnet18', ['cuttlefish.preset=short'])


def test_a_suggestion_for_a_misspelt_key_in_a_file(tmp_path):
    (tmp_path / 'r.yaml').write_text('model: {name: cf_resnet18_fmnist}\noptim: {lr: 0.1, wieght_decay: 0.1}\n')
    with pytest.raises(RecipeError) as caught:
        load_recipe(str(tmp_path / 'r.yaml'))
    assert str(caught.value) == (
        f'recipe {tmp_path / "r.yaml"}: optim.wieght_decay: unknown key; known here: '
        "['betas', 'clip_grad_norm', 'lr', 'momentum', 'name', 'nesterov', 'weight_decay']; "
        "did you mean 'weight_decay'?"
    )


@pytest.mark.parametrize(
    'text,message',
    [
        ('- epochs: 3\n- model: x\n', 'must be a mapping of keys (epochs: 10, model: {name: ...}, ...), got a list'),
        ('just words\n', 'must be a mapping of keys (epochs: 10, model: {name: ...}, ...), got a str'),
        ('', 'model: missing (required)'),
        ('model: {name: cf_resnet18_fmnist\n', 'is not valid YAML: '),
        ('model: {name: cf_resnet18_fmnist}\nepochs: 3\nepochs: 4\n', None),  # PyYAML keeps the last
        ('model: {name: cf_resnet18_fmnist}\nfoo: 1\n', "foo: unknown key; known here: ['amp', 'batch'"),
        ('model: {name: cf_resnet18_fmnist, arg: {}}\n', "model.arg: unknown key; known here: ['args', 'name']"),
    ],
)
def test_bad_files_fail_with_one_line(tmp_path, text, message):
    path = tmp_path / 'bad.yaml'
    path.write_text(text)
    if message is None:
        assert load_recipe(str(path))['epochs'] == 4
        return
    with pytest.raises(RecipeError) as caught:
        load_recipe(str(path))
    assert str(caught.value).startswith(f'recipe {path}') and message in str(caught.value), str(caught.value)
    assert '\n' not in str(caught.value)


def test_missing_recipes_and_directories(tmp_path):
    with pytest.raises(RecipeError, match=r"recipe 'fmnist_resnet81' not found; did you mean 'fmnist_resnet18'\?"):
        load_recipe('fmnist_resnet81')
    with pytest.raises(RecipeError, match='is a directory; give a recipe file'):
        load_recipe(str(tmp_path))
