<?php

// Laravel 8 from Debian's php-laravel-framework: its autoloader lives under /usr/share/php, so
// this app needs no Composer download. (With Composer, this line is vendor/autoload.php.)
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

$app = new Illuminate\Foundation\Application(dirname(__DIR__));

// Compiled views, sessions and the package manifest go here; created on first use.
$storage = getenv('APP_STORAGE') ?: $app->basePath('storage');
$app->useStoragePath($storage);
foreach (['framework/views', 'framework/cache', 'logs'] as $dir) {
    is_dir("$storage/$dir") || mkdir("$storage/$dir", 0775, true);
}
putenv("APP_PACKAGES_CACHE=$storage/framework/cache/packages.php");
putenv("APP_SERVICES_CACHE=$storage/framework/cache/services.php");

$app->singleton(Illuminate\Contracts\Http\Kernel::class, App\Http\Kernel::class);
$app->singleton(Illuminate\Contracts\Console\Kernel::class, App\Console\Kernel::class);
$app->singleton(Illuminate\Contracts\Debug\ExceptionHandler::class, App\Exceptions\Handler::class);

return $app;
