<?php

// With Composer (`composer install`, which also links the runwire/laravel package from its
// path repository), this is vendor/autoload.php. Without it: Laravel 8 from Debian's
// php-laravel-framework, whose autoloader lives under /usr/share/php, and the app's own
// composer.json read by bootstrap/packages.php — no download at all.
$composer = __DIR__.'/../vendor/autoload.php';
if (is_file($composer)) {
    require $composer;
} else {
    require_once 'Illuminate/autoload.php';
    // The app's own classes (Composer's PSR-4 "App\\" => "app/").
    spl_autoload_register(function (string $class): void {
        if (strncmp($class, 'App\\', 4) === 0) {
            $file = __DIR__.'/../app/'.str_replace('\\', '/', substr($class, 4)).'.php';
            if (is_file($file)) {
                require $file;
            }
        }
    });
}

$app = new Illuminate\Foundation\Application(dirname(__DIR__));

// Compiled views, sessions and the package manifest go here; created on first use.
$storage = getenv('APP_STORAGE') ?: $app->basePath('storage');
$app->useStoragePath($storage);
foreach (['framework/views', 'framework/cache', 'logs'] as $dir) {
    is_dir("$storage/$dir") || mkdir("$storage/$dir", 0775, true);
}
putenv("APP_PACKAGES_CACHE=$storage/framework/cache/packages.php");
putenv("APP_SERVICES_CACHE=$storage/framework/cache/services.php");
if (! is_file($composer)) {
    (require __DIR__.'/packages.php')($app, $storage);
}

$app->singleton(Illuminate\Contracts\Http\Kernel::class, App\Http\Kernel::class);
$app->singleton(Illuminate\Contracts\Console\Kernel::class, App\Console\Kernel::class);
$app->singleton(Illuminate\Contracts\Debug\ExceptionHandler::class, App\Exceptions\Handler::class);

return $app;
