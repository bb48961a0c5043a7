<?php

// The package's tests, runnable with plain `php tests/run.php` (no PHPUnit, no Composer):
// tokens, channels, the Livewire trait's listener wiring, the Blade components and
// directive, the provider's routes, and the migration against runwire's SQL. Laravel comes
// from Composer's vendor/ if there is one, else from Debian's php-laravel-framework.
// (The browser side — the quiet refreshes these listeners get — is e2e/laravel.test.mjs.)

use Illuminate\Config\Repository;
use Illuminate\Foundation\Application;
use Illuminate\Support\Facades\Blade;
use Illuminate\Support\Facades\Facade;
use Runwire\Laravel\Channel;
use Runwire\Laravel\Livewire\RefreshesOnRunwire;
use Runwire\Laravel\Runwire;
use Runwire\Laravel\RunwireServiceProvider;

$package = dirname(__DIR__);
$vendor = $package.'/vendor/autoload.php';
require is_file($vendor) ? $vendor : 'Illuminate/autoload.php';
spl_autoload_register(function (string $class) use ($package): void {
    if (str_starts_with($class, 'Runwire\\Laravel\\')) {
        $file = $package.'/src/'.str_replace('\\', '/', substr($class, strlen('Runwire\\Laravel\\'))).'.php';
        if (is_file($file)) {
            require $file;
        }
    }
});

const SECRET = 'runwire-package-tests-secret-0123456789';

// ---- a tiny runner -------------------------------------------------------------------------

$tests = [];
function test(string $name, callable $body): void
{
    $GLOBALS['tests'][$name] = $body;
}
function check(bool $ok, string $what): void
{
    if (! $ok) {
        throw new RuntimeException($what);
    }
}
function same(mixed $expected, mixed $actual, string $what = ''): void
{
    check($expected === $actual, ($what ? "$what: " : '').'expected '.var_export($expected, true).', got '.var_export($actual, true));
}
function throws(callable $body, string $pattern): void
{
    try {
        $body();
    } catch (Throwable $e) {
        check((bool) preg_match($pattern, $e->getMessage()), 'wrong error: '.$e->getMessage());

        return;
    }
    throw new RuntimeException("expected an error matching $pattern");
}

/** A booted app with the package registered, `$config` over the defaults. */
function bootApp(array $config = []): Application
{
    $base = sys_get_temp_dir().'/runwire-package-tests-'.getmypid();
    @mkdir($base.'/views', 0777, true);
    $app = new Application($base);
    Facade::clearResolvedInstances();
    Facade::setFacadeApplication($app);
    $app->instance('config', new Repository(array_replace_recursive([
        'app' => ['env' => 'testing'],
        'view' => ['paths' => [], 'compiled' => $base.'/views'],
        'runwire' => ['secret' => SECRET],
    ], $config)));
    $app->register(Illuminate\Filesystem\FilesystemServiceProvider::class);
    $app->register(Illuminate\View\ViewServiceProvider::class);
    $app->register(RunwireServiceProvider::class);
    $app->boot();

    return $app;
}

function claims(string $token): array
{
    [$head, $body, $signature] = explode('.', $token);
    $decode = fn (string $part) => base64_decode(strtr($part, '-_', '+/'));
    $expected = rtrim(strtr(base64_encode(hash_hmac('sha256', "$head.$body", SECRET, true)), '+/', '-_'), '=');
    check(hash_equals($expected, $signature), 'the signature verifies with the shared secret');
    same(['alg' => 'HS256', 'typ' => 'JWT'], json_decode($decode($head), true));

    return json_decode($decode($body), true);
}

class User implements Illuminate\Contracts\Auth\Authenticatable
{
    use Illuminate\Auth\Authenticatable;

    public function __construct(public int $id)
    {
    }

    public function getKeyName()
    {
        return 'id';
    }
}

/** Stands in for a Livewire component: what the trait uses of one, recorded. */
abstract class ComponentDouble
{
    public array $skipped = [];

    public array $dispatched = [];

    public function __construct(private string $componentId, public array $items)
    {
    }

    public function getId()
    {
        return $this->componentId;
    }

    public function skipRender()
    {
        $this->skipped[] = true;
    }

    public function dispatch($event, ...$params)
    {
        $this->dispatched[] = [$event, $params];
    }

    public function listeners(): array
    {
        return $this->getListeners();
    }

    protected function refreshOnRunwire(): array
    {
        return $this->items;
    }
}

class RunViewer extends ComponentDouble
{
    use RefreshesOnRunwire;

    protected $listeners = ['saved' => '$refresh'];

    public array $mountedActions = [];

    public ?array $mountedTableActions = null;
}

class Livewire2Card extends ComponentDouble
{
    use RefreshesOnRunwire;

    public function dispatchBrowserEvent($event, $data = null)
    {
        $this->dispatched[] = [$event, $data];
    }
}

// ---- tests ---------------------------------------------------------------------------------

test('tokens: HS256 over {sub, exp} with the shared secret, for a user or an id', function () {
    $runwire = bootApp()->make(Runwire::class);
    $claims = claims($runwire->token(new User(42)));
    same(['sub', 'exp'], array_keys($claims));
    same('42', $claims['sub']);
    check(abs($claims['exp'] - (time() + 300)) <= 1, 'exp = now + runwire.ttl (300 s)');
    same('7', claims($runwire->token(7, 60))['sub']);
    check(abs(claims($runwire->token('7', 60))['exp'] - (time() + 60)) <= 1, 'a ttl of its own');
    same('42', claims(\Runwire\Laravel\Facades\Runwire::token(new User(42)))['sub'], 'the facade');
    throws(fn () => bootApp(['runwire' => ['secret' => 'short']])->make(Runwire::class)->token(1), '/at least 32 bytes/');
    throws(fn () => $runwire->token(''), '/needs a user id/');
});

test('channels: names and whether they are active, by runwire\'s rule', function () {
    $run = fn (string $status) => (object) ['id' => 42, 'status' => $status];
    same(['runs.42', true], [Channel::run($run('queued'))->name, Channel::run($run('queued'))->active]);
    same(true, Channel::run($run('running'))->active);
    foreach (['completed', 'failed', 'cancelled', '', 'something new'] as $status) {
        same(false, Channel::run($run($status))->active, $status);
    }
    same(true, Channel::run(42)->active, 'an id alone: active');
    $pack = fn (string $status) => (object) ['id' => 9, 'status' => $status];
    same('tenants.7.review-pack', Channel::reviewPack(7, $pack('generating'))->name);
    same([true, true, false, false], [
        Channel::reviewPack(7, $pack('queued'))->active,
        Channel::reviewPack((object) ['id' => 7], $pack('generating'))->active,
        Channel::reviewPack(7, $pack('ready'))->active,
        Channel::reviewPack(7, null)->active,
    ]);
    same(['workspaces.3.runs', true], [Channel::workspaceRuns(3)->name, Channel::workspaceRuns(3)->active]);
    throws(fn () => Channel::run(0), '/positive ids/');
    throws(fn () => Channel::run('1,2'), '/positive ids/');
});

test('the trait: one quiet-refresh Echo listener per active item, in the component\'s group, own listeners kept', function () {
    $component = new RunViewer('cmp1', [
        Channel::run((object) ['id' => 42, 'status' => 'running']),
        Channel::run((object) ['id' => 43, 'status' => 'completed']),
        Channel::reviewPack(7, (object) ['id' => 9, 'status' => 'generating']),
        Channel::reviewPack(8, (object) ['id' => 10, 'status' => 'ready']),
        Channel::workspaceRuns(3),
    ]);
    same([
        'saved' => '$refresh',
        'echo-private:runs.42,.refresh.cmp1' => 'runwireRefresh',
        'echo-private:tenants.7.review-pack,.refresh.cmp1' => 'runwireRefresh',
        'echo-private:workspaces.3.runs,.refresh.cmp1' => 'runwireRefresh',
    ], $component->listeners());
    // Each is what Livewire's Echo support turns into Echo.private(channel).listen(event, …):
    // `echo-private:` then the channel and the event, split at the first comma.
    foreach (array_keys($component->runwireListeners()) as $listener) {
        check((bool) preg_match('/^echo-private:([a-z0-9.-]+),(\.refresh\.cmp1)$/', $listener), "Livewire's shape: $listener");
    }
    same([], (new Livewire2Card('c2', [Channel::run((object) ['id' => 1, 'status' => 'failed'])]))->runwireListeners(), 'nothing finished is listened to');
});

test('the trait: the listeners stay as mounted when an item finishes (Livewire checks every event against them)', function () {
    $run = (object) ['id' => 42, 'status' => 'running'];
    $component = new RunViewer('cmp1', [Channel::run($run)]);
    $mounted = $component->listeners();
    same(['runs.42'], $component->runwireListening, 'kept with the component\'s state');
    // The next request: the run completed meanwhile, and the state comes back from the page.
    $later = new RunViewer('cmp1', [Channel::run((object) ['id' => 42, 'status' => 'completed'])]);
    $later->runwireListening = $component->runwireListening;
    same($mounted, $later->listeners(), 'the completed run\'s listener is still accepted');
});

test('the trait: runwireRefresh re-renders, except while a Filament action is mounted', function () {
    $component = new RunViewer('cmp1', []);
    $component->runwireRefresh();
    same([], $component->skipped, 'a plain refresh renders');
    $component->mountedActions = ['edit'];
    $component->runwireRefresh();
    same([true], $component->skipped, 'an action is mounted: nothing rendered now');
    $component->mountedActions = [];
    $component->mountedTableActions = ['delete'];
    $component->runwireRefresh();
    same([true, true], $component->skipped, 'a table action too');
});

test('the trait: runwireFollow tells the browser (Livewire 3 dispatch, Livewire 2 browser event)', function () {
    $v3 = new RunViewer('cmp1', []);
    $v3->runwireFollow(Channel::reviewPack(7), Channel::run(5));
    same([['runwire-follow', ['group' => 'cmp1', 'channels' => ['tenants.7.review-pack', 'runs.5']]]], $v3->dispatched);
    $v2 = new Livewire2Card('c2', []);
    $v2->runwireFollow(Channel::reviewPack(7));
    same([['runwire-follow', ['group' => 'c2', 'channels' => ['tenants.7.review-pack']]]], $v2->dispatched);
});

test('<x-runwire::run>: the state as the server has it, live while active, escaped', function () {
    bootApp();
    $render = fn (object $run) => Blade::render('<x-runwire::run :run="$run" class="card" />', ['run' => $run]);
    $html = $render((object) ['id' => 42, 'status' => 'running', 'outcome' => 'pending', 'summary_counts' => '{"total": 4, "processed": 2}']);
    foreach (['data-runwire-run="42"', 'data-status="running"', 'data-terminal="false"', 'class="runwire-run card"', '>running</span>', '>2 / 4</span>', 'max="4" value="2"'] as $part) {
        check(str_contains($html, $part), "renders $part: $html");
    }
    $done = $render((object) ['id' => 43, 'status' => 'completed', 'outcome' => 'succeeded', 'summary_counts' => ['total' => 1, 'processed' => 1]]);
    check(str_contains($done, 'data-terminal="true"') && str_contains($done, '>1 / 1</span>'), "terminal, counts from an array: $done");
    $hostile = $render((object) ['id' => 44, 'status' => '<script>x</script>', 'outcome' => '"', 'summary_counts' => null]);
    check(! str_contains($hostile, '<script>x') && str_contains($hostile, '&lt;script&gt;'), 'statuses are free text, escaped');
    check(str_contains($hostile, 'hidden'), 'no counts: the bar is hidden');
});

test('<x-runwire::review-pack>: the latest pack, or none', function () {
    bootApp();
    $html = Blade::render('<x-runwire::review-pack :tenant="$tenant" :pack="$pack" />', ['tenant' => (object) ['id' => 7], 'pack' => (object) ['id' => 9, 'status' => 'generating']]);
    foreach (['data-runwire-review-pack="7"', 'data-pack-id="9"', 'data-status="generating"', 'data-terminal="false"', '>generating</span>'] as $part) {
        check(str_contains($html, $part), "renders $part: $html");
    }
    $none = Blade::render('<x-runwire::review-pack :tenant="7" :pack="null" none="Nothing yet" />');
    foreach (['data-status="none"', 'data-terminal="true"', '>Nothing yet</span>', 'data-none-text="Nothing yet"'] as $part) {
        check(str_contains($none, $part), "renders $part: $none");
    }
});

test('@runwireScripts: the client config (URL, a token for the user, the token route) and runwire.js', function () {
    $app = bootApp(['runwire' => ['url' => 'https://rw.example/</script><b>']]);
    check(str_contains(Blade::compileString('@runwireScripts'), '->scripts(auth()->user())'), 'the directive asks for the signed-in user');
    $html = $app->make(Runwire::class)->scripts(new User(5));
    check(str_contains($html, '<script src="https://rw.example/&lt;/script&gt;&lt;b&gt;/runwire.js"></script>'), "loads the global script: $html");
    preg_match('~<script type="application/json" id="runwire-config">(.*?)</script>~', $html, $m);
    $config = json_decode($m[1], true);
    same(['url', 'token', 'tokenUrl'], array_keys($config));
    same('https://rw.example/</script><b>', $config['url'], 'escaped inside the script element, intact as JSON');
    same('5', claims($config['token'])['sub']);
    same('/runwire/token', $config['tokenUrl']);
    same(['url', 'tokenUrl'], array_keys($app->make(Runwire::class)->clientConfig(null)), 'no user: no token');
});

test('the token route: GET /runwire/token behind web + auth, and refused under a proxied runwire prefix', function () {
    // (Apps refresh name lookups once every provider booted; a bare app does not.)
    $named = function (array $config = []) {
        $routes = bootApp($config)['router']->getRoutes();
        $routes->refreshNameLookups();

        return $routes->getByName('runwire.token');
    };
    $route = $named();
    check($route !== null, 'registered');
    same('runwire/token', $route->uri());
    same(['GET', 'HEAD'], $route->methods());
    same(['web', 'auth'], $route->gatherMiddleware());
    same(null, $named(['runwire' => ['token_route' => ['enabled' => false]]]), 'off');
    throws(fn () => bootApp(['runwire' => ['url' => '/runwire']]), '/lies under runwire.url/');
    check($named(['runwire' => ['url' => '/runwire', 'token_route' => ['path' => 'auth/runwire-token']]]) !== null, 'another path is fine');
});

test('the integration is runwire\'s own SQL, verbatim, and the migration installs it by runwire.changes', function () use ($package) {
    foreach (['notify', 'wal', 'remove_notify', 'remove_wal'] as $name) {
        same(file_get_contents($package."/../../migrations/$name.sql"), \Runwire\Laravel\Integration::sql($name), "copy runwire's migrations/$name.sql to resources/sql/$name.sql");
    }
    $migration = file_get_contents($package.'/database/migrations/2026_01_01_000001_runwire_integration.php');
    check(str_contains($migration, "Integration::install(DB::connection(), config('runwire.changes', 'auto'))"), 'the migration installs by the config');
    same('auto', bootApp()['config']->get('runwire.changes'), 'auto by default, as runwire migrate');
    throws(fn () => \Runwire\Laravel\Integration::install(new \Illuminate\Database\Connection(fn () => null), 'triggers'), '/auto, wal or notify/');
});

// ---- run -----------------------------------------------------------------------------------

$failed = 0;
$n = 0;
foreach ($tests as $name => $body) {
    if (getenv("ONLY") && ! str_contains($name, getenv("ONLY"))) continue;
    $n++;
    try {
        $body();
        echo "ok $n - $name\n";
    } catch (Throwable $e) {
        $failed++;
        echo "not ok $n - $name\n  # ".str_replace("\n", "\n  # ", $e->getMessage())."\n  # at ".$e->getFile().':'.$e->getLine()."\n";
    }
}
echo "1..$n\n# failed $failed\n";
exit($failed ? 1 : 0);
