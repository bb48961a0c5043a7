<?php

namespace Runwire\Laravel;

use Illuminate\Support\Facades\Blade;
use Illuminate\Support\Facades\Route;
use Illuminate\Support\ServiceProvider;
use Runwire\Laravel\Http\TokenController;

/**
 * Wires the package into the app (auto-discovered): the config, the token route, the
 * integration migration, the `<x-runwire::run>` / `<x-runwire::review-pack>` components and
 * the `@runwireScripts` directive. Everything here uses APIs Laravel 8 through 11 keep.
 */
class RunwireServiceProvider extends ServiceProvider
{
    public function register()
    {
        $this->mergeConfigFrom(__DIR__.'/../config/runwire.php', 'runwire');
        $this->app->singleton(Runwire::class, fn ($app) => new Runwire($app['config']));
    }

    public function boot()
    {
        $this->publishes([__DIR__.'/../config/runwire.php' => config_path('runwire.php')], 'runwire-config');
        $this->publishes([__DIR__.'/../database/migrations' => database_path('migrations')], 'runwire-migrations');
        if ($this->app['config']->get('runwire.migrations', true)) {
            $this->loadMigrationsFrom(__DIR__.'/../database/migrations');
        }

        $this->loadViewsFrom(__DIR__.'/../resources/views', 'runwire');
        Blade::componentNamespace('Runwire\\Laravel\\View\\Components', 'runwire');
        Blade::directive('runwireScripts', fn () => '<?php echo app('.Runwire::class.'::class)->scripts(auth()->user()); ?>');

        $this->registerTokenRoute();
    }

    private function registerTokenRoute(): void
    {
        $runwire = $this->app->make(Runwire::class);
        $path = $runwire->tokenPath();
        if ($path === null) {
            return;
        }
        // Behind a reverse proxy, runwire's prefix goes to runwire: a token route under it
        // would never reach the app, and every refresh would fail.
        $prefix = $runwire->url();
        if (str_starts_with($prefix, '/') && ($path === $prefix || str_starts_with($path, $prefix.'/'))) {
            throw new \LogicException("runwire.token_route.path ({$path}) lies under runwire.url ({$prefix}), which your proxy sends to runwire: choose another path (RUNWIRE_TOKEN_PATH)");
        }
        if ($this->app->routesAreCached()) {
            return;
        }
        Route::middleware($this->app['config']->get('runwire.token_route.middleware', ['web', 'auth']))
            ->get($path, TokenController::class)
            ->name('runwire.token');
    }
}
