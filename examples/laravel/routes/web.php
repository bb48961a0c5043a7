<?php

use App\Http\Controllers\OperationsController;
use App\Livewire\ReviewPackCard;
use App\Livewire\RunViewer;
use App\LivewireStandIn\Runtime;
use Illuminate\Support\Facades\Auth;
use Illuminate\Support\Facades\Route;

Route::middleware('auth')->group(function () {
    // The two pages that used to poll, with the package's Blade components.
    Route::get('/operations/{run}', [OperationsController::class, 'run'])->whereNumber('run');
    Route::get('/tenants/{tenant}', [OperationsController::class, 'tenant'])->whereNumber('tenant');
    Route::post('/tenants/{tenant}/review-packs', [OperationsController::class, 'generatePack'])->whereNumber('tenant');

    // The same two as Livewire components with the RefreshesOnRunwire trait (app/Livewire),
    // run by the stand-in for Livewire (app/LivewireStandIn), which cannot be installed here.
    Route::get('/live/operations/{run}', [OperationsController::class, 'liveRun'])->whereNumber('run');
    Route::get('/live/tenants/{tenant}', [OperationsController::class, 'liveTenant'])->whereNumber('tenant');
    Route::post('/livewire-stand-in/update', [Runtime::class, 'update']);
});

// laravel-echo, which a host's bundle would contain (npm); here from LARAVEL_ECHO_JS.
Route::get('/js/laravel-echo.js', function () {
    $file = (string) env('LARAVEL_ECHO_JS');
    abort_unless($file !== '' && is_file($file), 404);

    return response()->file($file, ['Content-Type' => 'text/javascript']);
});

// Stand-in for the app's real login, so the example runs on its own. Never ship this.
if (app()->environment('local')) {
    Route::get('/dev/login/{user}', function (int $user) {
        Auth::loginUsingId($user);
        $next = (string) request('next', '/');

        return redirect(str_starts_with($next, '/') && ! str_starts_with($next, '//') ? $next : '/');
    })->whereNumber('user');
}

Route::get('/', fn () => response('Sign in first.', 200));
